from popbox.cli import run_cli

run_cli()
