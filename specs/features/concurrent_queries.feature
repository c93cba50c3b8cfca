Feature: Memory Manager
  As a consciousness system
  I want efficient memory management
  So that queries process quickly

  # "Consistent performance" is checked as a property, not a timing: readers take no
  # lock, so they go on at full speed while a writer holds the manager's lock.
  Scenario: Concurrent query processing
    Given multiple active queries
    When they access the same dimension
    Then all should succeed
    And no data corruption should occur
    And performance should remain consistent
