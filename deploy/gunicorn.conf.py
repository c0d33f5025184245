"""gunicorn configuration shared by `make run`, `make cluster`, the image and Kubernetes.

Everything comes from the same Settings as the app, so a bad variable stops the master
before it forks. Start with: gunicorn -c deploy/gunicorn.conf.py 'service.main:create_app()'
"""

from service.core.config import Settings

_settings = Settings()

bind = [_settings.bind]
workers = _settings.web_concurrency
worker_class = "service.worker.Worker"
# Workers build their Redis client and load the model in the app lifespan, after the fork.
preload_app = False
graceful_timeout = _settings.graceful_timeout
timeout = 30
keepalive = 75
backlog = 2048
max_requests = 0
# Only these peers may set the client address through X-Forwarded-For (uvicorn picks the
# right-most untrusted entry, never the first one blindly).
forwarded_allow_ips = ",".join(_settings.trusted_proxies)
proxy_allow_ips = forwarded_allow_ips
accesslog = None
errorlog = "-"
loglevel = _settings.log_level
proc_name = f"secure-ml-api:{_settings.instance_name}"
