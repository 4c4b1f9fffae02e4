"""Images, volumes and annotations: reading, writing, and the template (see :mod:`medshot.data.image`)."""
