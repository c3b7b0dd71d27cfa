"""ASGI entry point: ``uvicorn api.main:app`` (what ``inboxsync serve`` runs)."""

from api.app import create_app
from api.webhooks import Ingress

app = Ingress(create_app())
