"""Django integration: publish a stub after each committed save or delete of chosen models.

Add ``"changefeed.contrib.django"`` to ``INSTALLED_APPS``, point ``CHANGEFEED_APP`` at your
`changefeed.App` (``"module:attr"``) and list models in ``CHANGEFEED_MODELS``, or call
`register_model` yourself (e.g. in an ``AppConfig.ready``).
"""

from changefeed.contrib.django.publishing import (
    DjangoPublisher,
    publisher,
    register_model,
    unregister_model,
)

__all__ = ["DjangoPublisher", "publisher", "register_model", "unregister_model"]
