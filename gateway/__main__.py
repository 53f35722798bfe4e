import uvicorn

from gateway.settings import GatewaySettings
from libs.common.logs import configure_logging

settings = GatewaySettings()
configure_logging("gateway", settings.log_level)
uvicorn.run(
    "gateway.app:create_app",
    factory=True,
    host=settings.host,
    port=settings.port,
    log_config=None,
    access_log=False,
    timeout_graceful_shutdown=5,
)
