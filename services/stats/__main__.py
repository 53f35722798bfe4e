from libs.common.runtime import main
from services.stats.app import SPEC

main(SPEC, "services.stats.app:create_app")
