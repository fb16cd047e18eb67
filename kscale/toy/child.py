"""The pinned training process's entry point (see :mod:`kscale.toy.reproducible`).

Its own module because it is the one place that needs both sides: the provider (to train) and the
pinning (to check and configure the process). Kept out of ``reproducible`` so that module stays
below ``ladder`` with no import back up.
"""
from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence

from kscale.toy.ladder import ToyProvider
from kscale.toy.reproducible import configure_child, in_pinned_child


def main(argv: Sequence[str] | None = None) -> int:
    """Child entry point (``reproducible._CHILD_MAIN``): ``main(['<json request>'])``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not in_pinned_child():
        raise SystemExit("kscale.toy.child is started by ToyProvider.ensure, with a pinned environment")
    request = json.loads((argv if argv is not None else sys.argv[1:])[0])
    configure_child()
    provider = ToyProvider()
    provider.ensure(request["sizes"], request["options"], revisions=request["revisions"])
    print(json.dumps({"n_trained": provider.n_trained}), flush=True)
    return 0
