"""gcp-storage-emulator as the suite runs it, and the fixtures' way of starting it.

`python tests/gcs_emulator.py start --port P …` serves it, with one addition (a launcher, not
product code): its media downloads carry no `x-goog-generation` header, which real GCS always
sends and tensorstore reads as the object's generation. Without it, every conditional write
tensorstore makes (an OCDBT manifest: each Orbax checkpoint's commit) fails with "Malformed
StorageGeneration". This adds the generation headers from the emulator's own object record;
nothing else changes. (The emulator also ignores `ifGenerationMatch`, so concurrent writers are
not tested against it.)

`emulator(log_dir)` starts it on a free port with one bucket, points this process's clients at
it (gcsfs: STORAGE_EMULATOR_HOST; tensorstore, Orbax's array writes: TENSORSTORE_GCS_HTTP_URL)
and stops it after; `client_env(url)` is the same environment for child processes.
"""

import contextlib
import subprocess
import sys
import time
import urllib.request

BUCKET = "lmjax-test"


def client_env(url: str) -> dict[str, str]:
  """The environment that points gcsfs and tensorstore at the emulator at `url`."""
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}  # tensorstore: no credential hunt


@contextlib.contextmanager
def serving(args: list[str], ready_url: str, log_path):
  """A server started as `python *args`, yielded once `ready_url` answers; killed after."""
  log = open(log_path, "w")
  server = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 30
    while True:
      try:
        urllib.request.urlopen(ready_url, timeout=1).read()
        break
      except OSError:
        assert server.poll() is None and time.monotonic() < deadline, f"{args} did not start"
        time.sleep(0.1)
    yield
  finally:
    server.kill()
    server.wait(timeout=30)
    log.close()


@contextlib.contextmanager
def emulator(log_dir):
  """The emulator's URL (bucket BUCKET), with this process's environment pointing every
  client at it; stopped, and the clients' caches cleared, after."""
  import gcsfs
  import pytest
  from lmjax import storage
  from tests.processes import ROOT, free_port
  url = f"http://127.0.0.1:{free_port()}"
  args = [str(ROOT / "tests" / "gcs_emulator.py"), "start", "--port", url.rsplit(":", 1)[1],
          "--default-bucket", BUCKET, "--in-memory", "--quiet"]
  with serving(args, f"{url}/storage/v1/b/{BUCKET}", log_dir / "emulator.log"), \
      pytest.MonkeyPatch.context() as env:
    for name, value in client_env(url).items():
      env.setenv(name, value)
    gcsfs.GCSFileSystem.clear_instance_cache()
    try:
      yield url
    finally:
      gcsfs.GCSFileSystem.clear_instance_cache()
      storage._probed.clear()


def _serve(argv: list[str]) -> int:
  from gcp_storage_emulator.handlers import objects
  download = objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    try:
      record = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # noqa: BLE001 -- not found: the original handler answered 404
      return
    response["x-goog-generation"] = str(record.get("generation", "1"))
    response["x-goog-metageneration"] = str(record.get("metageneration", "1"))

  objects.download = download_with_generation  # before the server's routing table is built
  from gcp_storage_emulator.__main__ import main
  return main(argv)


if __name__ == "__main__":
  sys.exit(_serve(sys.argv[1:]))
