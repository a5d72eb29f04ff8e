"""USB devices for the device tests, built the way the udev sensor builds them."""

from __future__ import annotations

from baomi.devices.model import UsbDevice, UsbInterface


def interface(text: str) -> UsbInterface:
    """``cc:ss:pp`` as a :class:`UsbInterface`."""
    cls, sub, proto = (int(part, 16) for part in text.split(":"))
    return UsbInterface(cls, sub, proto)


def usb(
    *interfaces: str,
    usb_id: str = "0781:5581",
    serial: str = "",
    name: str = "",
    port: str = "1-2",
    descriptor_hash: str = "",
    parent_hash: str = "",
    connect_type: str = "hotplug",
    mtp: bool = False,
) -> UsbDevice:
    """A device with these interfaces (``"08:06:50"``, ...) and attributes."""
    vendor, product = usb_id.split(":")
    return UsbDevice(
        sys_path=f"/sys/devices/pci0000:00/0000:00:14.0/usb1/{port}",
        port=port,
        vendor_id=vendor,
        product_id=product,
        serial=serial,
        name=name,
        interfaces=tuple(interface(i) for i in interfaces),
        descriptor_hash=descriptor_hash,
        parent_hash=parent_hash,
        connect_type=connect_type,
        mtp=mtp,
    )


STICK = usb(
    "08:06:50",
    usb_id="0781:5581",
    serial="4C530001230815117313",
    name="Ultra",
    descriptor_hash="Xb1Ck6bZk0VdJQhLw+5W7fJk3Zr1mZ0d8mP1tR2v9sA=",
    parent_hash="jEP/6WzviqdJ5VSeTUY8PatCNBKeaREvo2OqdplND/o=",
)
KEYBOARD = usb("03:01:01", "03:00:00", usb_id="413c:2113", name="Dell KB216 Wired Keyboard")
MOUSE = usb("03:01:02", usb_id="046d:c077", name="USB Optical Mouse")
HUB = usb("09:00:00", usb_id="05e3:0608", name="USB2.0 Hub")
WEBCAM = usb(
    "0e:01:00", "0e:02:00", "01:01:00", "01:02:00", usb_id="046d:085b", name="Logitech Webcam C925e"
)
USB_MIC = usb("01:01:00", "01:02:00", "03:00:00", usb_id="19f7:0003", name="RODE NT-USB")
WIRELESS_MIC_RX = usb(
    "01:01:00", "01:02:00", "01:02:00", "03:00:00", usb_id="19f7:0040", name="Wireless GO II RX"
)
DJI_MIC_RX = usb("01:01:00", "01:02:00", usb_id="2ca3:4011", name="DJI MIC 2")
CAMERA = usb("06:01:01", usb_id="04a9:32b4", name="Canon Digital Camera")
ANDROID_MTP = usb("ff:ff:00", "ff:42:01", usb_id="18d1:4ee2", name="Pixel 7", mtp=True)
ANDROID_PTP_MTP_FLAG = usb("06:01:01", usb_id="2717:ff48", name="Redmi Note", mtp=True)
IPHONE = usb(
    "06:01:01", "ff:fe:02", "ff:fd:01", usb_id="05ac:12a8", name="iPhone", serial="00008110"
)
RNDIS_TETHER = usb("e0:01:03", "0a:00:00", usb_id="18d1:4ee3", name="Pixel 7")
BLUETOOTH = usb("e0:01:01", "e0:01:01", "ff:ff:ff", usb_id="8087:0026", name="AX201 Bluetooth")
BADUSB_STICK_KEYBOARD = usb("08:06:50", "03:01:01", usb_id="1234:5678", name="USB DISK")
BADUSB_NET_KEYBOARD = usb(
    "03:01:01", "02:06:00", "0a:00:00", usb_id="1d6b:0104", name="Multifunction Composite Gadget"
)
HEADSET = usb("01:01:00", "01:02:00", "01:02:00", "03:00:00", usb_id="047f:c056", name="Headset")
PRINTER = usb(
    "07:01:02", usb_id="04f9:0042", serial="E73214K2N123456", name="HL-2270DW series", port="1-6"
)
LOGITECH_UNIFYING = usb("03:01:01", "03:01:02", "03:00:00", usb_id="046d:c52b", name="USB Receiver")
