// Counts heap allocations made through global operator new while a scope is
// active, for the zero-allocation hot-path tests. Link alloc_counter.cc into
// the test binary (it replaces the global operator new/delete).
#pragma once

namespace kvring::testing {

class AllocationCounter {
 public:
  AllocationCounter();   // starts counting from zero
  ~AllocationCounter();  // stops counting
  long count() const;
};

}  // namespace kvring::testing
