#pragma once

namespace ptool {

const char* version();

}  // namespace ptool
