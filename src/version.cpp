#include "src/version.h"

namespace ptool {

const char* version() { return PTOOL_VERSION; }

}  // namespace ptool
