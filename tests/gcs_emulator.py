"""gcp-storage-emulator as the suite runs it: `python tests/gcs_emulator.py start --port P …`.

One addition to the emulator (a launcher, not product code): its media downloads carry no
`x-goog-generation` header, which real GCS always sends and tensorstore reads as the object's
generation. Without it, every conditional write tensorstore makes (an OCDBT manifest: each Orbax
checkpoint's commit) fails with "Malformed StorageGeneration". This adds the generation headers
from the emulator's own object record; nothing else changes. (The emulator also ignores
`ifGenerationMatch`, so concurrent writers are not tested against it.)
"""

import sys

from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  try:
    record = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except Exception:  # noqa: BLE001 -- not found: the original handler answered 404
    return
  response["x-goog-generation"] = str(record.get("generation", "1"))
  response["x-goog-metageneration"] = str(record.get("metageneration", "1"))


objects.download = _download_with_generation  # before the server's routing table is built

from gcp_storage_emulator.__main__ import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
