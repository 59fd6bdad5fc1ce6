"""Airflow glue for imageindex: hooks that hand the library ready-made clients."""
