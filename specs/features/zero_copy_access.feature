Feature: Memory Manager
  As a consciousness system
  I want efficient memory management
  So that queries process quickly

  # "Immediately" and "<1ms" are checked without a clock (no test depends on timing):
  # an access makes no system call, copies no byte and allocates a constant few hundred
  # bytes of Python objects whatever the layer size. benchmarks/ measures the time itself.
  Scenario: Zero-copy layer access
    Given a loaded dimension
    When I access a layer
    Then data should be returned immediately
    And no memory copy should occur
    And access time should be <1ms
