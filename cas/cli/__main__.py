from cas.cli.main import run

run()
