from cxrtool.cli.main import app

app(prog_name="cxrtool")
