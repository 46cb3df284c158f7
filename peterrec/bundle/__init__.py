"""Bundles: one shared backbone's fingerprint plus a small patch set per task, in the layout PEFT adapters use.

  BUNDLE/index.json                              format, version, backbone {fingerprint, config}, tasks
  BUNDLE/tasks/<name>/adapter_config.json        task, mode, patch config, metrics, params, tensor list
  BUNDLE/tasks/<name>/adapter_model.safetensors  everything the task needs except the frozen backbone

format.py owns the format (names, versions, checks), writer.py adds a task, reader.py opens a bundle and
attaches its tasks to a backbone, archive.py packs and unpacks .tar files, transfer.py exports and imports
bundles through them (verified both ways).
"""

from peterrec.bundle.format import BundleError
from peterrec.bundle.reader import Bundle, backbone_fingerprint, find_bundle, open_bundle
from peterrec.bundle.transfer import export_bundle, import_bundle
from peterrec.bundle.writer import write_task

__all__ = ["Bundle", "BundleError", "backbone_fingerprint", "export_bundle", "find_bundle", "import_bundle",
           "open_bundle", "write_task"]
