"""Make two images and save them: the Python client's quickstart.

Run it against a running server (``scripts/serve``); ``DREAMFORGE_URL`` and
``DREAMFORGE_API_KEY`` say where and as whom, when not the local server without keys:

    python docs/examples/quickstart.py out/
"""

import sys

from dreamforge.client import Client, EventType

out = sys.argv[1] if len(sys.argv) > 1 else "out"

with Client() as forge:
    job = forge.submit(prompt="a lighthouse at dawn, oil on canvas", count=2, seed=7)
    print(f"job {job.id} {job.status}")
    for event in forge.events(job.id):
        if event.type is EventType.ARTIFACT:
            print(f"image {event.data.item_index} stored, seed {event.data.seed}")
        elif event.type is EventType.DONE:
            print(f"done: {event.data.status}")
    for path in forge.save(job.id, out):
        print(f"saved {path}")
