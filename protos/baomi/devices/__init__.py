"""The USB policy language: what a device is (model, classes), USBGuard-syntax rules,
the registry of sticks and the device policy built from them. The agent enforces it
(agent/sensors/usb.py); the collector checks it and approves devices into it."""
