"""Importers from public data formats into a data directory (docs/ARCHITECTURE.md, "Data on disk")."""

from tasks.importers.data_dir import import_data_dir
from tasks.importers.movielens import import_movielens
from tasks.importers.peterrec_csv import import_peterrec_csv

__all__ = ["import_data_dir", "import_movielens", "import_peterrec_csv"]
