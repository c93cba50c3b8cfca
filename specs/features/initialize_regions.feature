Feature: Memory Manager
  As a consciousness system
  I want efficient memory management
  So that queries process quickly

  Scenario: Initialize memory regions
    Given a default configuration
    When I initialize the memory manager
    Then 280MB should be allocated
    And all 14 dimensions should have regions
    And regions should be page-aligned
