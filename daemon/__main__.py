"""``python -m daemon`` runs the same command line as the ``driftd`` script."""

from daemon.cli import main

if __name__ == "__main__":
    main()
