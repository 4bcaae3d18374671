"""Job kinds: one module each, owning its payload, validation, upstream call and answer check.

A kind's sender (e.g. :class:`gateway.kinds.lead.LeadKind`) is what the relay drives: it names
its kind and Calltouch method, how many jobs one call may carry, builds the call from the
jobs' payloads and reads a 2xx answer into one verdict per job. Adding a kind is adding a
module here and one line in :func:`gateway.app._senders`. A large kind keeps parts of its
own beside it (``deal_fields`` and ``deal_merge`` of ``deal``, ``order1_params`` of
``order1``); ``fields``, ``leadservice`` and ``matching`` serve several kinds.
"""
