from libs.common.runtime import main
from services.commission.app import SPEC

main(SPEC, "services.commission.app:create_app")
