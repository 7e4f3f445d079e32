"""``python -m editstore`` (and ``torchrun -m editstore``): the command line, as ``editstore`` runs it."""

from editstore_cli.main import cli

if __name__ == "__main__":
    cli()
