"""``python -m experiments.proxy``: the proxy benchmark's command line (:mod:`.cli`)."""

from .cli import main

if __name__ == "__main__":
    main()
