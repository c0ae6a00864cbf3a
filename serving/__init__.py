"""The BentoML service's machinery: settings, tasks, preprocessing, version routing, the Triton client,
HTTP glue and observability. ``service.py`` at the root is the service class and its endpoints."""
