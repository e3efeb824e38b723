"""Progress bars: tqdm's, throttled when they are written to a log file or a pipe rather than a terminal."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm
from tqdm.asyncio import tqdm as text_tqdm  # what tqdm.auto gives outside notebooks

__all__: list[str] = []  # the package's own machinery: none of it is API (docs/api.md)

_LOG_INTERVAL = 30.0  # seconds between the updates of a bar written to a file (tqdm's 0.1 s: 36,000 lines an hour)


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` (tqdm.auto: a widget in notebooks). A text bar whose stream (``file``, default
    stderr) is not a terminal updates at most every ``_LOG_INTERVAL`` seconds, as each update becomes a line of the
    log, unless ``mininterval=`` or the environment's ``TQDM_MININTERVAL`` says otherwise; it still writes its last
    state when closed. It checks the time at every item (``miniters=1``): tqdm's monitor thread refreshes a bar whose
    ``miniters`` it set above 1 once it has printed nothing for ``maxinterval`` (10 s), which wrote a training log's
    bar every 10 to 20 s."""
    stream = kwargs.get("file") or sys.stderr
    is_terminal = getattr(stream, "isatty", lambda: False)()
    if tqdm is text_tqdm and not is_terminal and "mininterval" not in kwargs and "TQDM_MININTERVAL" not in os.environ:
        kwargs["mininterval"] = _LOG_INTERVAL
        kwargs.setdefault("miniters", 1)
    return tqdm(iterable, **kwargs)
