"""The D-Bus face that makes stock targetcli show /backstores/user:mirror (docs/tcmu.md).

targetcli (ui_backstore.py `_user_backstores`) asks the owner of `org.kernel.TCMUService1` for
`org.freedesktop.DBus.ObjectManager.GetManagedObjects` on `/org/kernel/TCMUService1`; every
returned object `.../<subtype>` becomes a `user:<subtype>` node whose `help create` shows the
`ConfigDesc` property, and `create` calls `CheckConfig("<subtype>/<cfgstring>") -> (b, s)`.

Same contract as tcmu-runner (tcmu-handler.xml, main.c): one handler object per subtype under
the object manager, plus `/org/kernel/TCMUService1/HandlerManager1` exported outside the object
manager. We are the machine's only TCMU daemon, so RegisterHandler refuses external handlers.

No `from __future__ import annotations` here: dbus-fast reads the signature strings from the
method annotations at class creation.
"""

import logging
from collections.abc import Callable

from dbus_fast import BusType, Message, MessageType, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method

log = logging.getLogger(__name__)

BUS_NAME = "org.kernel.TCMUService1"
ROOT_PATH = "/org/kernel/TCMUService1"
HANDLER_INTERFACE = "org.kernel.TCMUService1"
MANAGER_PATH = ROOT_PATH + "/HandlerManager1"
MANAGER_INTERFACE = "org.kernel.TCMUService1.HandlerManager1"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"

# D-Bus signatures, read by dbus-fast from the annotations (names keep the linter happy).
SIG_STR = "s"
SIG_OK_MESSAGE = "bs"

ConfigCheck = Callable[[str], tuple[bool, str]]


class DBusServiceError(RuntimeError):
    """The bus name cannot be owned (tcmu-runner or another instance holds it)."""


class HandlerObject(ServiceInterface):
    """`/org/kernel/TCMUService1/<subtype>`, interface org.kernel.TCMUService1."""

    def __init__(self, subtype: str, config_desc: str, check: ConfigCheck) -> None:
        super().__init__(HANDLER_INTERFACE)
        self.subtype = subtype
        self.config_desc = config_desc
        self._check = check

    @method()
    def CheckConfig(self, configstr: SIG_STR) -> SIG_OK_MESSAGE:
        try:
            ok, message = self._check(configstr)
        except Exception as err:  # a D-Bus error would make targetcli print a traceback
            log.exception("CheckConfig(%r) failed", configstr)
            return [False, f"internal error checking the config string: {err}"]
        return [bool(ok), str(message)]

    @dbus_property(access=PropertyAccess.READ)
    def ConfigDesc(self) -> SIG_STR:
        return self.config_desc


class HandlerManager(ServiceInterface):
    """`/org/kernel/TCMUService1/HandlerManager1`: external handler registration (refused)."""

    def __init__(self) -> None:
        super().__init__(MANAGER_INTERFACE)

    @method()
    def RegisterHandler(self, subtype: SIG_STR, cfgstr_desc: SIG_STR) -> SIG_OK_MESSAGE:
        return [False, f"external TCMU handlers are not supported by appliance-handler "
                       f"(asked for {subtype!r})"]

    @method()
    def UnregisterHandler(self, subtype: SIG_STR) -> SIG_OK_MESSAGE:
        return [False, "unknown subtype"]


class TcmuDBusService:
    """Owns org.kernel.TCMUService1 and serves the handler objects."""

    def __init__(self, handlers: list[HandlerObject]) -> None:
        self.handlers = {handler.subtype: handler for handler in handlers}
        self.bus: MessageBus | None = None

    async def start(self, *, bus_address: str | None = None,
                    bus_type: BusType = BusType.SYSTEM) -> None:
        bus = MessageBus(bus_address=bus_address, bus_type=bus_type)
        await bus.connect()
        try:
            for subtype, handler in self.handlers.items():
                bus.export(f"{ROOT_PATH}/{subtype}", handler)
            bus.export(MANAGER_PATH, HandlerManager())
            bus.add_message_handler(self._object_manager)
            reply = await bus.request_name(BUS_NAME)
            if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
                raise DBusServiceError(f"{BUS_NAME} is owned by another process ({reply.name}); "
                                       "stop tcmu-runner before starting appliance-handler")
        except BaseException:
            bus.disconnect()
            raise
        self.bus = bus

    def _object_manager(self, msg: Message) -> Message | None:
        """GetManagedObjects listing only handler objects, as GDBusObjectManagerServer does.

        (dbus-fast's built-in answer would also list HandlerManager1, which targetcli would
        show as a bogus user:HandlerManager1 backstore.)
        """
        if (msg.message_type is not MessageType.METHOD_CALL or msg.path != ROOT_PATH
                or msg.interface != OBJECT_MANAGER or msg.member != "GetManagedObjects"):
            return None
        objects = {
            f"{ROOT_PATH}/{subtype}": {
                HANDLER_INTERFACE: {"ConfigDesc": Variant("s", handler.config_desc)},
                "org.freedesktop.DBus.Properties": {},
                "org.freedesktop.DBus.Introspectable": {},
                "org.freedesktop.DBus.Peer": {},
            }
            for subtype, handler in self.handlers.items()
        }
        return Message.new_method_return(msg, "a{oa{sa{sv}}}", [objects])

    def stop(self) -> None:
        if self.bus is not None:
            self.bus.disconnect()
            self.bus = None
