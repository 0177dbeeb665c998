"""The client's sends waiting for their answers: what to resend, and which message ids
are this client's own. A pure record that :class:`~im_gateway.client_state.ClientState`
keeps; it writes nothing itself.

Every frame gets a client id unique to this instance (a random prefix, so a restarted
client never reuses an id the gateway would deduplicate). It stays here, and goes out
again with the same id on every new connection, until it is answered. Type 99
``internal`` and ``rate_limited`` are not answers: the frame is resent after a backoff.
Any other type 99 answers it as refused. At most ``own_ids_max`` ids of this client's
stored messages are remembered.

Answers owed. A frame written on the current connection and not answered yet is *owed*
an answer (:attr:`Sends.owed` counts them; a retried refusal is an answer, and the frame
is owed again once it is resent after its backoff); :attr:`Sends.answered` counts every
answer. :class:`~im_gateway.client_watch.AnswerWatch` turns the two into a deadline.
:attr:`Sends.succeeded` (type 10) and :attr:`Sends.internal` (``internal`` refusals)
count outcomes for :class:`~im_gateway.client_watch.RefusalWatch`.

Imports only the standard library (see :mod:`im_gateway.client_protocol`).
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .client_protocol import GROUP, PRIVATE, RETRIED, Answer, Refused, Sent


@dataclass(slots=True)
class _Pending:
    """A frame waiting for its answer."""

    text: str
    message: bool
    """True for types 1 and 2 (they produce a message; 12 and 13 do not)."""
    retry: bool = False
    """Waiting for a backoff after ``internal`` or ``rate_limited``."""
    attempts: int = 0
    owed: bool = False
    """Written on the current connection, and not answered since."""


class Sends:
    """The unanswered frames, in the order submitted, and the ids of own messages."""

    def __init__(self, id_prefix: str | None = None, own_ids_max: int = 100_000) -> None:
        self._prefix = id_prefix if id_prefix is not None else secrets.token_hex(6)
        self._counter = 0
        self._own_max = own_ids_max
        self._pending: dict[str, _Pending] = {}
        self._own: OrderedDict[str, None] = OrderedDict()
        self._answers: list[tuple[str, Answer]] = []
        self._retries: list[tuple[str, int]] = []
        self.owed = 0
        """Frames written on the current connection and not answered since."""
        self.answered = 0
        """Answers (type 10, and type 99 retried or not) to this client's frames, ever."""
        self.succeeded = 0
        """Type 10 answers to this client's frames, ever."""
        self.internal = 0
        """``internal`` refusals of this client's frames, ever."""

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._pending

    def submit(self, frame: dict[str, Any], *, written: bool) -> tuple[str, str]:
        """Keep a frame that wants a type 10; returns its client id and its text.
        ``written``: it goes out now (connected), so it is owed an answer."""
        self._counter += 1
        client_id = f"{self._prefix}-{self._counter}"
        text = json.dumps({"type": frame["type"], "id": client_id, **frame}, ensure_ascii=False)
        self._pending[client_id] = _Pending(text, frame["type"] in (PRIVATE, GROUP), owed=written)
        self.owed += written
        return client_id, text

    def all_again(self) -> list[str]:
        """Every unanswered frame, in order, for a new connection (backoffs cancelled);
        each is owed an answer."""
        for pending in self._pending.values():
            pending.retry = False
            pending.owed = True
        self.owed = len(self._pending)
        return [pending.text for pending in self._pending.values()]

    def disconnected(self) -> None:
        """The connection is gone: it owes nothing any more."""
        for pending in self._pending.values():
            pending.owed = False
        self.owed = 0

    def retry(self, client_id: str) -> str | None:
        """The text to send again when ``client_id`` still waits for its backoff (it is
        owed an answer again)."""
        pending = self._pending.get(client_id)
        if pending is None or not pending.retry:
            return None
        pending.retry = False
        self._owe(pending, True)
        return pending.text

    def _owe(self, pending: _Pending, owed: bool) -> None:
        self.owed += owed - pending.owed
        pending.owed = owed

    def accepted(self, client_id: str, msg_id: str, time: str) -> None:
        """Type 10 for ``client_id`` (one of ours, unanswered)."""
        pending = self._pending.pop(client_id)
        self._owe(pending, False)
        self.answered += 1
        self.succeeded += 1
        if pending.message:
            self._own[msg_id] = None
            if len(self._own) > self._own_max:
                self._own.popitem(last=False)
        self._answers.append((client_id, Sent(client_id, msg_id, time)))

    def refused(self, client_id: str, code: str, message: str) -> bool:
        """Type 99 for ``client_id``; True when it answered the frame (False: unknown, or
        to be retried after a backoff)."""
        pending = self._pending.get(client_id)
        if pending is None:
            return False
        self._owe(pending, False)
        self.answered += 1
        self.internal += code == "internal"
        if code in RETRIED:
            pending.retry = True
            pending.attempts += 1
            self._retries.append((client_id, pending.attempts))
            return False
        del self._pending[client_id]
        self._answers.append((client_id, Refused(code, message)))
        return True

    def unanswered_messages(self) -> frozenset[str]:
        """The client ids of unanswered messages (types 1 and 2)."""
        return frozenset(c for c, p in self._pending.items() if p.message)

    def is_own(self, msg_id: str) -> bool:
        """``msg_id`` was stored for one of this client's sends."""
        return msg_id in self._own

    def take_answers(self) -> list[tuple[str, Answer]]:
        out, self._answers = self._answers, []
        return out

    def take_retries(self) -> list[tuple[str, int]]:
        out, self._retries = self._retries, []
        return out
