"""``python -m synfer`` (also what ``accelerate launch -m synfer`` runs)."""

from .cli import main

if __name__ == "__main__":
    main()
