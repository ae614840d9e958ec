"""A worker process of a study (``archlab study NAME --workers N`` starts N of them): it rebuilds the study from
the payload file the parent wrote, then claims and runs trials until none is left (:meth:`StudyRun.work`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from archlab.studies.engine import StudyRun
from archlab.studies.files import study_from_source
from archlab.studies.plan import Settings


def main(argv: list[str]) -> int:
    payload = json.loads(Path(argv[0]).read_text())
    settings = payload["settings"]
    settings["seeds"] = tuple(settings["seeds"]) if settings.get("seeds") else None
    run = StudyRun(study_from_source(payload["source"]), Settings(**settings), payload["out"], payload["storage"],
                   payload["source"], heartbeat_s=payload["heartbeat_s"], grace_s=payload["grace_s"])
    try:
        run.work(threads=payload["threads"])
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the parent shows what each worker said
        from archlab.train.loop import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            return 128 + int(exc.signum)
        print(f"archlab: error: study worker: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
