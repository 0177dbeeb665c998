from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UndeliverableReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNDELIVERABLE_REASON_UNSPECIFIED: _ClassVar[UndeliverableReason]
    UNDELIVERABLE_REASON_NOT_ATTACHED: _ClassVar[UndeliverableReason]
    UNDELIVERABLE_REASON_QUEUE_FULL: _ClassVar[UndeliverableReason]
    UNDELIVERABLE_REASON_INVALID: _ClassVar[UndeliverableReason]
UNDELIVERABLE_REASON_UNSPECIFIED: UndeliverableReason
UNDELIVERABLE_REASON_NOT_ATTACHED: UndeliverableReason
UNDELIVERABLE_REASON_QUEUE_FULL: UndeliverableReason
UNDELIVERABLE_REASON_INVALID: UndeliverableReason

class Message(_message.Message):
    __slots__ = ("id", "to", "type", "content_type", "time", "content")
    ID_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    to: int
    type: int
    content_type: int
    time: int
    content: str
    def __init__(self, id: _Optional[str] = ..., to: _Optional[int] = ..., type: _Optional[int] = ..., content_type: _Optional[int] = ..., time: _Optional[int] = ..., content: _Optional[str] = ..., **kwargs) -> None: ...

class UserIds(_message.Message):
    __slots__ = ("user_ids", "seqs")
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[int]
    seqs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_ids: _Optional[_Iterable[int]] = ..., seqs: _Optional[_Iterable[str]] = ...) -> None: ...

class TransmitMap(_message.Message):
    __slots__ = ("users", "message")
    class UsersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: UserIds
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[UserIds, _Mapping]] = ...) -> None: ...
    USERS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    users: _containers.MessageMap[str, UserIds]
    message: Message
    def __init__(self, users: _Optional[_Mapping[str, UserIds]] = ..., message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("gateway_id",)
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    def __init__(self, gateway_id: _Optional[str] = ...) -> None: ...

class Probe(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class ProbeReply(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class TransmitBatch(_message.Message):
    __slots__ = ("maps",)
    MAPS_FIELD_NUMBER: _ClassVar[int]
    maps: _containers.RepeatedCompositeFieldContainer[TransmitMap]
    def __init__(self, maps: _Optional[_Iterable[_Union[TransmitMap, _Mapping]]] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "batch", "probe_reply")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PROBE_REPLY_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    batch: TransmitBatch
    probe_reply: ProbeReply
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., batch: _Optional[_Union[TransmitBatch, _Mapping]] = ..., probe_reply: _Optional[_Union[ProbeReply, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("hub_id",)
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    hub_id: str
    def __init__(self, hub_id: _Optional[str] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("message", "users")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    message: Message
    users: UserIds
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ..., users: _Optional[_Union[UserIds, _Mapping]] = ...) -> None: ...

class Undeliverable(_message.Message):
    __slots__ = ("gateway_id", "message_ids", "user_ids", "reason")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    user_ids: _containers.RepeatedScalarFieldContainer[int]
    reason: UndeliverableReason
    def __init__(self, gateway_id: _Optional[str] = ..., message_ids: _Optional[_Iterable[str]] = ..., user_ids: _Optional[_Iterable[int]] = ..., reason: _Optional[_Union[UndeliverableReason, str]] = ...) -> None: ...

class DeliveryBatch(_message.Message):
    __slots__ = ("deliveries", "undeliverable")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    UNDELIVERABLE_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    undeliverable: _containers.RepeatedCompositeFieldContainer[Undeliverable]
    def __init__(self, deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ..., undeliverable: _Optional[_Iterable[_Union[Undeliverable, _Mapping]]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "batch", "probe")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    batch: DeliveryBatch
    probe: Probe
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., batch: _Optional[_Union[DeliveryBatch, _Mapping]] = ..., probe: _Optional[_Union[Probe, _Mapping]] = ...) -> None: ...

class ListGatewaysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GatewayInfo(_message.Message):
    __slots__ = ("gateway_id", "peer", "attached_at", "queue_depth")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_AT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    peer: str
    attached_at: int
    queue_depth: int
    def __init__(self, gateway_id: _Optional[str] = ..., peer: _Optional[str] = ..., attached_at: _Optional[int] = ..., queue_depth: _Optional[int] = ...) -> None: ...

class ListGatewaysResponse(_message.Message):
    __slots__ = ("gateways",)
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    gateways: _containers.RepeatedCompositeFieldContainer[GatewayInfo]
    def __init__(self, gateways: _Optional[_Iterable[_Union[GatewayInfo, _Mapping]]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GatewayStats(_message.Message):
    __slots__ = ("gateway_id", "deliveries_sent", "transmit_maps_received", "queue_full", "attached")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_SENT_FIELD_NUMBER: _ClassVar[int]
    TRANSMIT_MAPS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FULL_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    deliveries_sent: int
    transmit_maps_received: int
    queue_full: int
    attached: bool
    def __init__(self, gateway_id: _Optional[str] = ..., deliveries_sent: _Optional[int] = ..., transmit_maps_received: _Optional[int] = ..., queue_full: _Optional[int] = ..., attached: _Optional[bool] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("hub_id", "transmit_maps_received", "deliveries_sent", "undeliverable", "queue_full", "gateways", "started_at")
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSMIT_MAPS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_SENT_FIELD_NUMBER: _ClassVar[int]
    UNDELIVERABLE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FULL_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    hub_id: str
    transmit_maps_received: int
    deliveries_sent: int
    undeliverable: int
    queue_full: int
    gateways: _containers.RepeatedCompositeFieldContainer[GatewayStats]
    started_at: int
    def __init__(self, hub_id: _Optional[str] = ..., transmit_maps_received: _Optional[int] = ..., deliveries_sent: _Optional[int] = ..., undeliverable: _Optional[int] = ..., queue_full: _Optional[int] = ..., gateways: _Optional[_Iterable[_Union[GatewayStats, _Mapping]]] = ..., started_at: _Optional[int] = ...) -> None: ...
