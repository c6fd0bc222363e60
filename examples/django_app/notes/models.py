"""A note per tenant (``domain``); ``version`` grows on every save so pillows can tell a
stale read from a current one."""

from django.db import models


class Note(models.Model):
    title = models.CharField(max_length=200)
    domain = models.CharField(max_length=100)
    version = models.PositiveIntegerField(default=0)

    class Meta:
        app_label = "notes"

    def save(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.version += 1
        super().save(*args, **kwargs)
