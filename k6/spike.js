// The flash-sale spike: arrivals ramp 50 -> 300 -> 1,000 req/s, hold, and taper, from thousands of
// distinct buyers. Rates and durations scale with env vars so the same script runs locally and in-cluster:
//   BASE_URL, SALE, JWT_SECRET, BUYERS, PEAK_RATE (1000), MID_RATE (300), START_RATE (50), STAGE_SECONDS (10)
import { buy, config, summaryWriter } from './lib/buy.js';

const peak = parseInt(__ENV.PEAK_RATE || '1000', 10);
const mid = parseInt(__ENV.MID_RATE || '300', 10);
const stage = parseInt(__ENV.STAGE_SECONDS || '10', 10);

export const options = {
  scenarios: {
    spike: {
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
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: [`p(95)<${__ENV.P95_MS || '500'}`],
    reservations_unexpected: ['count==0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
};

const cfg = config();
export default function () { buy(cfg); }
export const handleSummary = summaryWriter('spike');
