"""The REST API's routers, one module per resource; :mod:`imageindex_airflow.app` includes them."""
