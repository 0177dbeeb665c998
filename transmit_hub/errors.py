"""The exceptions of transmit_hub.

All derive from :class:`TransmitHubError`::

    TransmitHubError
    ├── ConfigError        a flag, setting or constructor argument is invalid
    ├── LifecycleError     a server used before start(), or started twice
    ├── ProtocolError      a peer broke the Connect stream protocol
    └── LinkError          the gateway link could not do what was asked
        └── LinkClosed     the link was closed by its owner
"""

from __future__ import annotations


class TransmitHubError(Exception):
    """The root of every exception this package raises on purpose."""


class ConfigError(TransmitHubError):
    """A flag, setting or constructor argument is invalid; the message names the fix."""


class LifecycleError(TransmitHubError):
    """A server was used in the wrong state: asked for its port before ``start()``, or
    started twice."""


class ProtocolError(TransmitHubError):
    """A peer broke the Connect stream protocol (for instance, no Hello first)."""


class LinkError(TransmitHubError):
    """The gateway link could not do what was asked."""


class LinkClosed(LinkError):
    """The link was closed by its owner; nothing more can be sent on it."""
