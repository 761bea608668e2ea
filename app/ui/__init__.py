"""The /ui jobs dashboard's templates and assets (served by app/api/ui.py)."""
