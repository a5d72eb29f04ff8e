"""Baomi's shared package, imported by agent and collector alike: the wire protocol
(generated ``baomi.v1``), the chain rule, and the policy language (``baomi.policy``,
``baomi.devices``, ``baomi.meeting``, ``baomi.labels``)."""
