from libs.common.runtime import main
from services.order.app import SPEC

main(SPEC, "services.order.app:create_app")
