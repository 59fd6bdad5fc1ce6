"""Airflow glue for imageindex: the REST API and "View Data" page (``plugin.py`` mounts
``app.py``, which assembles the routers in ``routers/``), and the run-progress reader
(``runs.py``)."""
