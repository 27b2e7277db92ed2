"""Entry module: the Celery app for `celery -A worker`."""
from worker.factory import create_celery_app

app = create_celery_app()
