"""``python -m dbtk`` runs the same CLI as the ``dbtk`` console script."""

from dbtk.cli import main

if __name__ == "__main__":
    main(prog_name="dbtk")
