"""A format-1 artifact (written by the trainer before the manifest had a schema) still
loads and serves exactly what it served then.

``data/format1/`` is a tiny synthetic shop (1,000 events, 40 items, 20 users) trained
and written by that trainer; ``data/format1-answers.json`` holds the answers the
server's ranking gave from it at the time (see ``data/README.md``).
"""

import json

from recsvc import artifact as art
from recsvc.model import Model

from factories import FORMAT1_ANSWERS, FORMAT1_ARTIFACT, answers


def test_format1_artifact_serves_what_it_served() -> None:
    model = Model(art.read_artifact(FORMAT1_ARTIFACT))
    assert answers(model) == json.loads(FORMAT1_ANSWERS.read_text())
