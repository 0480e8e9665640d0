from cxrtool.cli.main import run

run()
