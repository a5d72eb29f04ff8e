"""A USB device as the rules see it: identity, interfaces, and untrusted strings.

Everything here except ``sys_path`` and ``port`` comes from the device itself, so it is
chosen by whoever built the device. Strings are kept verbatim (an investigator needs
the exact bytes a device claimed) but bounded in length; consumers must escape them.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_DEVICE_STRING = 256  # characters kept of a product, manufacturer or serial string


def bounded(text: str, limit: int = MAX_DEVICE_STRING) -> str:
    """``text`` cut to ``limit`` characters (verbatim otherwise)."""
    return text if len(text) <= limit else text[:limit]


@dataclass(frozen=True, slots=True)
class UsbInterface:
    """One interface's class triple, as in ``ID_USB_INTERFACES`` (``:080650:``)."""

    cls: int
    subclass: int
    protocol: int

    def __str__(self) -> str:
        return f"{self.cls:02x}:{self.subclass:02x}:{self.protocol:02x}"


@dataclass(frozen=True, slots=True)
class UsbDevice:
    """A ``usb_device`` (not an interface), read from udev and sysfs."""

    sys_path: str  # /sys/devices/..., where authorized and remove are written
    port: str  # the kernel name, e.g. "1-1.5.2.4" (USBGuard's via-port)
    vendor_id: str  # four lowercase hex digits
    product_id: str  # four lowercase hex digits
    serial: str = ""  # untrusted, bounded
    name: str = ""  # product string; untrusted, bounded
    manufacturer: str = ""  # untrusted, bounded
    interfaces: tuple[UsbInterface, ...] = ()
    descriptor_hash: str = ""  # USBGuard-compatible "hash" (base64 SHA-256)
    parent_hash: str = ""
    device_class: int = 0  # bDeviceClass (0: per interface)
    connect_type: str = ""  # port/connect_type: hotplug, hardwired, ... (with-connect-type)
    mtp: bool = False  # udev ID_MTP_DEVICE=1 or an interface string "MTP": a phone, not a camera

    @property
    def usb_id(self) -> str:
        """``vvvv:pppp`` as USBGuard's ``id`` attribute."""
        return f"{self.vendor_id}:{self.product_id}"
