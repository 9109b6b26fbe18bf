// Load shapes shared by the scripts, every knob from an environment variable so the same script runs
// locally and in-cluster.

// The case study's spike: arrivals ramp START_RATE -> MID_RATE -> PEAK_RATE, hold, and taper, each stage
// STAGE_SECONDS long (the hold lasts two).
export function spike() {
  const peak = parseInt(__ENV.PEAK_RATE || '1000', 10);
  const mid = parseInt(__ENV.MID_RATE || '300', 10);
  const stage = parseInt(__ENV.STAGE_SECONDS || '10', 10);
  return {
    executor: 'ramping-arrival-rate',
    startRate: parseInt(__ENV.START_RATE || '50', 10),
    timeUnit: '1s',
    preAllocatedVUs: parseInt(__ENV.VUS || '200', 10),
    maxVUs: parseInt(__ENV.MAX_VUS || '2000', 10),
    stages: [
      { target: mid, duration: `${stage}s` },
      { target: peak, duration: `${stage}s` },
      { target: peak, duration: `${2 * stage}s` },
      { target: 0, duration: `${stage}s` },
    ],
  };
}

// A steady arrival rate: RATE per second for DURATION (defaults per script).
export function steady(rate, duration, maxVUs) {
  return {
    executor: 'constant-arrival-rate',
    rate: parseInt(__ENV.RATE || String(rate), 10),
    timeUnit: '1s',
    duration: __ENV.DURATION || duration,
    preAllocatedVUs: Math.min(100, maxVUs),
    maxVUs,
  };
}

export const TREND_STATS = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'];
