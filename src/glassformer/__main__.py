"""``python -m glassformer`` (also what ``torchrun -m glassformer`` runs)."""

from glassformer.cli import main

raise SystemExit(main())
