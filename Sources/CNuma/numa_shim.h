#pragma once
#include <numa.h>
#include <numaif.h>
#include <sched.h>
