from libs.common.runtime import main
from services.user.app import SPEC

main(SPEC, "services.user.app:create_app")
