"""The imageindex Airflow plugin: the REST API at ``/imageindex`` and a "View Data" entry in
the Airflow UI's navigation that shows the search and gallery page inside the UI.

Airflow's plugin loader imports this file as a top-level module (``.airflowignore`` keeps it
from importing the package's other files a second time that way); the plugins folder is on
``sys.path``, hence the absolute import of the app.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from imageindex_airflow.app import app


class ImageIndexPlugin(AirflowPlugin):
    name = "imageindex"
    fastapi_apps = [{"app": app, "url_prefix": "/imageindex", "name": "imageindex"}]
    # Airflow 3.1+: the UI shows href in an iframe under /plugin/<url_route>; same origin, so
    # the page's API calls carry the UI's login cookie. No category: a top-level nav entry.
    external_views = [
        {
            "name": "View Data",
            "href": "/imageindex/ui/",
            "destination": "nav",
            "url_route": "image-search",
        }
    ]
